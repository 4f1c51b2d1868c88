//! The scratched-disc fixture, mounted for real over FUSE: bad sectors fail with a kernel `EIO`,
//! healing makes the whole file equal to the image, every read request is logged, and stopping
//! unmounts.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rafty_testkit::FaultyDisc;

const SECTOR: u64 = 2048;
const IMAGE_SIZE: u64 = 4 * 1024 * 1024;
const EIO: i32 = 5;

/// 4 MiB of deterministic, sector-distinct bytes (xorshift64).
fn image_bytes() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(IMAGE_SIZE as usize);
    while out.len() < IMAGE_SIZE as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The image written into a fresh temp dir.
fn image() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("disc.iso");
    let bytes = image_bytes();
    std::fs::write(&path, &bytes).expect("write the image");
    (dir, path, bytes)
}

fn sector(bytes: &[u8], lba: u64) -> &[u8] {
    &bytes[(lba * SECTOR) as usize..((lba + 1) * SECTOR) as usize]
}

/// Read `len` bytes at `offset` with one `pread` loop.
fn read_at(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn assert_eio(path: &Path, offset: u64, len: u64) {
    match read_at(path, offset, len) {
        Ok(_) => panic!("reading {len} bytes at {offset} succeeded; expected EIO"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(EIO),
            "reading {len} bytes at {offset}: expected EIO, got {e}"
        ),
    }
}

/// The /proc/self/mountinfo line whose mount point is `dir`, if any.
fn mountinfo_line(dir: &Path) -> Option<String> {
    let dir = dir.to_str().expect("UTF-8 path");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir))
        .map(str::to_owned)
}

#[test]
fn bad_sectors_fail_with_eio_until_healed() {
    let (_dir, image, bytes) = image();
    let disc = FaultyDisc::start(&image, &[(100, 101), (1500, 1500)]);
    let path = disc.path();

    assert_eq!(std::fs::metadata(&path).unwrap().len(), IMAGE_SIZE);
    assert_eq!(
        read_at(&path, 99 * SECTOR, SECTOR).unwrap(),
        sector(&bytes, 99)
    );
    assert_eio(&path, 100 * SECTOR, SECTOR);
    assert_eio(&path, 101 * SECTOR, SECTOR);
    assert_eq!(
        read_at(&path, 102 * SECTOR, SECTOR).unwrap(),
        sector(&bytes, 102)
    );
    assert_eio(&path, 1500 * SECTOR, SECTOR);
    assert_eq!(
        read_at(&path, 1501 * SECTOR, SECTOR).unwrap(),
        sector(&bytes, 1501)
    );
    assert_eq!(
        read_at(&path, 1499 * SECTOR, SECTOR).unwrap(),
        sector(&bytes, 1499)
    );
    // One request touching a bad sector fails as a whole, even by one byte, even unaligned.
    assert_eio(&path, 99 * SECTOR, 2 * SECTOR);
    assert_eio(&path, 100 * SECTOR - 1, 2);
    assert_eio(&path, 1500 * SECTOR + 2047, 1);
    assert_eq!(
        read_at(&path, 100 * SECTOR - 10, 10).unwrap(),
        &bytes[(100 * SECTOR - 10) as usize..(100 * SECTOR) as usize]
    );
    // Reading the whole file stops at the first bad sector (the 1 MiB request holding it fails).
    let err = std::fs::read(&path).expect_err("the whole file has bad sectors");
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");

    disc.heal();
    assert_eq!(
        read_at(&path, 100 * SECTOR, SECTOR).unwrap(),
        sector(&bytes, 100)
    );
    let all = std::fs::read(&path).expect("read the healed disc");
    assert_eq!(all.len(), bytes.len());
    assert!(all == bytes, "the healed disc differs from the image");
}

#[test]
fn every_read_request_is_logged_with_the_callers_offset_and_size() {
    let (_dir, image, bytes) = image();
    let disc = FaultyDisc::start(&image, &[(100, 101)]);
    let f = File::open(disc.path()).unwrap();
    assert_eq!(disc.reads(), vec![], "opening reads nothing");

    let mut buf = vec![0; SECTOR as usize];
    f.read_exact_at(&mut buf, 99 * SECTOR).unwrap();
    assert_eq!(buf, sector(&bytes, 99));
    let err = f.read_exact_at(&mut buf, 100 * SECTOR).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(EIO));
    // Direct I/O: the exact offsets and sizes asked for, no page rounding, no readahead, no
    // retry; the failed read is logged too.
    assert_eq!(
        disc.reads(),
        vec![(99 * SECTOR, SECTOR), (100 * SECTOR, SECTOR)]
    );
    // Again: no page cache, so the same read reaches the fixture again.
    f.read_exact_at(&mut buf, 99 * SECTOR).unwrap();
    assert_eq!(disc.reads().len(), 3);
    let mut small = [0u8; 10];
    f.read_exact_at(&mut small, 12345).unwrap();
    assert_eq!(disc.reads()[3], (12345, 10));

    disc.clear_reads();
    assert_eq!(disc.reads(), vec![]);

    // A 3 MiB read reaches the fixture as contiguous requests of at most 1 MiB each.
    let mut big = vec![0u8; 3 << 20];
    let mut reader = File::open(disc.path()).unwrap();
    reader.seek(SeekFrom::Start(102 * SECTOR)).unwrap();
    reader.read_exact(&mut big).unwrap();
    assert!(big[..] == bytes[(102 * SECTOR) as usize..(102 * SECTOR) as usize + (3 << 20)]);
    let reads = disc.reads();
    assert!(reads.len() >= 3, "3 MiB came in {reads:?}");
    let mut next = 102 * SECTOR;
    for &(offset, size) in &reads {
        assert_eq!(offset, next, "requests are contiguous: {reads:?}");
        assert!(size <= 1 << 20, "a request over 1 MiB: {reads:?}");
        next += size;
    }
    assert_eq!(next, 102 * SECTOR + (3 << 20), "{reads:?}");
}

#[test]
fn dropping_unmounts() {
    let (_dir, image, _bytes) = image();
    let disc = FaultyDisc::start(&image, &[(1, 1)]);
    let mount = disc.path().parent().unwrap().to_path_buf();
    let line = mountinfo_line(&mount).expect("mounted while the fixture lives");
    assert!(line.contains(" - fuse rafty-faultydisc "), "{line}");
    drop(disc);
    assert_eq!(mountinfo_line(&mount), None, "still mounted after drop");
}

/// Start the binary directly (not through the testkit), and wait for `ready`.
fn start_binary(image: &Path, mount: &Path) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rafty-faultydisc"))
        .arg("--image")
        .arg(image)
        .arg("--mount")
        .arg(mount)
        .arg("--bad")
        .arg("7")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start rafty-faultydisc");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    child
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("rafty-faultydisc did not exit within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let (dir, image, _bytes) = image();
    let mount = dir.path().canonicalize().unwrap().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let mut child = start_binary(&image, &mount);
    let line = mountinfo_line(&mount).expect("mounted after ready");
    let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(opts.contains(&"ro"), "read-only mount: {line}");
    assert!(line.contains(" - fuse rafty-faultydisc "), "{line}");
    assert!(line.contains("allow_other"), "root may read: {line}");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child);
    assert!(status.success(), "exit status {status}");
    assert_eq!(mountinfo_line(&mount), None, "still mounted after SIGTERM");
}

#[test]
fn sigint_with_the_disc_still_open_detaches_and_exits_zero() {
    let (dir, image, _bytes) = image();
    let mount = dir.path().canonicalize().unwrap().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let mut child = start_binary(&image, &mount);
    let held = File::open(mount.join("disc.iso")).unwrap();
    let mut buf = [0u8; 16];
    held.read_exact_at(&mut buf, 0).unwrap();

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = wait_exit(&mut child);
    assert!(status.success(), "exit status {status}");
    assert_eq!(mountinfo_line(&mount), None, "still mounted after SIGINT");
    // The FUSE connection is gone: the open file fails rather than hanging.
    let err = held.read_exact_at(&mut buf, 0).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(nix::libc::ENOTCONN),
        "reading the held file after exit: {err}"
    );
}

#[test]
fn bad_ranges_are_checked() {
    let (dir, image, _bytes) = image();
    for bad in ["5-3", "x", "1-", "-4"] {
        let out = Command::new(env!("CARGO_BIN_EXE_rafty-faultydisc"))
            .arg("--image")
            .arg(&image)
            .arg("--mount")
            .arg(dir.path())
            .arg(format!("--bad={bad}"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "--bad={bad} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--bad"),
            "--bad={bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "--bad={bad} mounted");
    }
}
