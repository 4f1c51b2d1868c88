//! `rafty-faultydisc`: a "scratched disc" test fixture.
//!
//! Mounts a read-only FUSE file system holding one regular file, `disc.iso`, whose bytes are those
//! of `--image`. A read request that overlaps one of the `--bad` sectors (2048-byte LBAs, ranges
//! inclusive) fails with a real kernel `EIO`, until the `--heal-file` exists (checked on every
//! read); then everything reads fine. Every read request the kernel sends is appended to
//! `--read-log` as a line `OFFSET SIZE`, so a test can see exactly which bytes a program asked for.
//!
//! The file is opened with `FOPEN_DIRECT_IO`: the page cache is bypassed, so every `read(2)` on
//! the file reaches this process with the caller's own offset and size (split by the kernel into
//! requests of at most 1 MiB, its FUSE `max_pages` limit).
//!
//! Prints `ready` on stdout once mounted; on SIGTERM or SIGINT unmounts and exits 0. If the mount
//! is busy (a file on it still open), it is detached lazily and the process exits anyway, which
//! aborts the FUSE connection: the open files then fail with `ENOTCONN`.
//!
//! ```text
//! rafty-faultydisc --image X.iso --mount DIR [--bad FIRST[-LAST]]... [--heal-file PATH] [--read-log PATH]
//! ```

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, Request, SessionACL,
};
use nix::sys::signal::{SigSet, Signal};

/// Bytes per sector (an LBA) on a DVD.
const SECTOR: u64 = 2048;
/// Name of the one file in the mount.
const DISC_NAME: &str = "disc.iso";
/// Inode of that file (the root directory is [`INodeNo::ROOT`]).
const DISC_INO: INodeNo = INodeNo(2);
/// Attribute and entry cache time: none, so nothing about the file is cached by the kernel.
const TTL: Duration = Duration::ZERO;

#[derive(Parser, Debug)]
#[command(
    name = "rafty-faultydisc",
    about = "Mount a disc image over FUSE with unreadable (EIO) sectors, for tests"
)]
struct Args {
    /// The disc image whose bytes `disc.iso` serves.
    #[arg(long)]
    image: PathBuf,
    /// An existing, empty directory to mount on.
    #[arg(long)]
    mount: PathBuf,
    /// Unreadable sectors: an LBA (`1500`) or an inclusive range (`100-101`); repeatable.
    #[arg(long = "bad", value_name = "FIRST[-LAST]", value_parser = parse_range)]
    bad: Vec<(u64, u64)>,
    /// While this file exists, every sector reads fine (checked on every read).
    #[arg(long, value_name = "PATH")]
    heal_file: Option<PathBuf>,
    /// Append every read request as a line `OFFSET SIZE` (bytes) to this file.
    #[arg(long, value_name = "PATH")]
    read_log: Option<PathBuf>,
}

/// Parse `FIRST` or `FIRST-LAST` (inclusive LBAs).
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let lba = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|e| format!("bad sector {t:?} in {s:?}: {e}"))
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (lba(a)?, lba(b)?),
        None => {
            let n = lba(s)?;
            (n, n)
        }
    };
    if first > last {
        return Err(format!("sector range {s:?} runs backwards"));
    }
    Ok((first, last))
}

/// The file system: one read-only file backed by the image.
struct FaultyDisc {
    image: File,
    size: u64,
    bad: Vec<(u64, u64)>,
    heal_file: Option<PathBuf>,
    read_log: Option<Mutex<File>>,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

impl FaultyDisc {
    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink, size) = if ino == INodeNo::ROOT {
            (FileType::Directory, 0o555, 2, 0)
        } else if ino == DISC_INO {
            (FileType::RegularFile, 0o444, 1, self.size)
        } else {
            return None;
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: SECTOR as u32,
            flags: 0,
        })
    }

    /// Whether the bytes `offset..offset + len` touch a bad sector.
    fn overlaps_bad(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let first = offset / SECTOR;
        let last = (offset + len - 1) / SECTOR;
        self.bad.iter().any(|&(a, b)| a <= last && b >= first)
    }

    fn healed(&self) -> bool {
        self.heal_file.as_ref().is_some_and(|p| p.exists())
    }

    fn log_read(&self, offset: u64, size: u32) {
        if let Some(log) = &self.read_log {
            let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
            // One write per line on an O_APPEND file: a test truncating the log loses nothing new.
            if let Err(e) = f
                .write_all(format!("{offset} {size}\n").as_bytes())
                .and_then(|()| f.flush())
            {
                eprintln!("rafty-faultydisc: cannot write the read log: {e}");
            }
        }
    }
}

impl Filesystem for FaultyDisc {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(DISC_INO) {
            Some(attr) if parent == INodeNo::ROOT && name == DISC_NAME => {
                reply.entry(&TTL, &attr, Generation(0));
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != DISC_INO {
            reply.error(Errno::EISDIR);
        } else if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
        } else {
            // Direct I/O, and no FOPEN_KEEP_CACHE: every read reaches `read` below.
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.log_read(offset, size);
        if ino != DISC_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if offset >= self.size {
            reply.data(&[]);
            return;
        }
        let len = u64::from(size).min(self.size - offset);
        if self.overlaps_bad(offset, len) && !self.healed() {
            reply.error(Errno::EIO);
            return;
        }
        let mut buf = vec![0u8; len as usize];
        match self.image.read_exact_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                eprintln!("rafty-faultydisc: reading the image at {offset} (+{len}): {e}");
                reply.error(Errno::EIO);
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (DISC_INO, FileType::RegularFile, DISC_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafty-faultydisc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn run(args: Args) -> io::Result<()> {
    let image = File::open(&args.image)
        .map_err(context(format!("cannot open {}", args.image.display())))?;
    let meta = image.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            args.image.display()
        )));
    }
    let read_log = match &args.read_log {
        Some(p) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(context(format!("cannot open the read log {}", p.display())))?,
        )),
        None => None,
    };
    let fs = FaultyDisc {
        image,
        size: meta.len(),
        bad: args.bad.clone(),
        heal_file: args.heal_file.clone(),
        read_log,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    };

    // Block the stop signals before any thread starts, so every thread inherits the mask and
    // only the waiter below receives them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().map_err(io::Error::from)?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("rafty-faultydisc".to_string()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
    ];
    // `allow_root` semantics (the kernel sees `allow_other`; fuser filters to root and owner).
    config.acl = SessionACL::RootAndOwner;
    let session = fuser::spawn_mount(fs, &args.mount, &config)
        .map_err(context(format!("cannot mount on {}", args.mount.display())))?;

    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = stop.wait() {
                let _ = tx.send(sig);
            }
        })?;

    {
        let mut out = io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }

    let sig = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(sig) => break sig,
            Err(mpsc::RecvTimeoutError::Timeout) if session.guard.is_finished() => {
                eprintln!("rafty-faultydisc: unmounted from outside; exiting");
                return session.join();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the signal waiter stopped"));
            }
        }
    };
    eprintln!(
        "rafty-faultydisc: {sig}: unmounting {}",
        args.mount.display()
    );
    match session.umount_and_join() {
        Ok(()) => Ok(()),
        Err(e) => {
            // Typically EBUSY: a file on the mount is still open. Detach the mount from the tree
            // now; exiting closes /dev/fuse, which aborts the connection for the open files.
            eprintln!("rafty-faultydisc: unmount failed ({e}); detaching lazily and exiting");
            nix::mount::umount2(&args.mount, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                io::Error::other(format!(
                    "cannot detach {} either: {e}",
                    args.mount.display()
                ))
            })
        }
    }
}
