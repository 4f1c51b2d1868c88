//! The copy engine: a disc (block device or file) to an image, as well as the drive can read it.
//!
//! Pass 1 reads large aligned chunks in order; a chunk that fails is marked non-trimmed and skipped, so
//! a scratch costs one failed read, not hundreds. Pass 2 reads the failed areas (and the bad sectors of
//! earlier runs) one 2048-byte sector at a time, each up to `retries` times. The map is saved as it
//! goes, so an interrupted or incomplete copy resumes where it stopped and reads only what is missing.
//!
//! The image is written to a partial file that the caller renames into place only when the map says
//! every byte is copied. SHA-256 is computed while streaming when a single clean pass read the whole
//! disc, otherwise from the finished image. Memory is one chunk buffer, whatever the disc's size.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::mapfile::{BAD, FINISHED, Map, NON_TRIED, NON_TRIMMED};

/// Sector size of optical discs.
pub const SECTOR: u64 = 2048;
/// Default size of a pass-1 read.
pub const DEFAULT_CHUNK: usize = 1 << 20;
/// Save the map at least this often while copying.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// How to copy.
pub struct CopyOptions<'a> {
    /// Bytes per pass-1 read (a multiple of 2048).
    pub chunk: usize,
    /// Attempts per sector in pass 2.
    pub retries: u32,
    /// Called with progress, at most every `progress_every`.
    pub progress: &'a mut dyn FnMut(&Progress),
    /// How often `progress` is called.
    pub progress_every: Duration,
    /// Set to stop early; the map is saved and the copy can be resumed.
    pub cancel: &'a AtomicBool,
    /// The disc's fingerprint, recorded in the map.
    pub fingerprint: String,
}

/// Progress of a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Bytes copied so far, including earlier runs.
    pub done: u64,
    /// Size of the disc.
    pub total: u64,
    /// Bytes read by this run per second.
    pub rate: f64,
    /// Estimated time left.
    pub eta: Option<Duration>,
    /// Sectors found unreadable so far (still to be retried while passes remain).
    pub unreadable: u64,
}

/// How a copy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Size of the disc.
    pub size: u64,
    /// Bytes this run read successfully.
    pub read_this_run: u64,
    /// Unreadable sectors left, as inclusive LBA ranges.
    pub bad: Vec<(u64, u64)>,
    /// SHA-256 of the image (lower-case hex), when complete.
    pub sha256: Option<String>,
    /// Whether the copy was stopped by `cancel`.
    pub cancelled: bool,
}

impl Report {
    /// Number of unreadable sectors.
    pub fn bad_sectors(&self) -> u64 {
        self.bad.iter().map(|(a, b)| b - a + 1).sum()
    }
}

/// A copy that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source could not be opened or measured.
    #[error("cannot read {path}: {source}")]
    Source {
        /// The device or file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing the image or its map failed.
    #[error("cannot write {path}: {source}{hint}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Not enough free space for the rest of the image.
    #[error(
        "not enough space for {path}: {needed} more bytes needed, {available} free; free some space or change [rip] iso-dir"
    )]
    NoSpace {
        /// The image.
        path: PathBuf,
        /// Bytes still to write.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The existing map does not belong to this source.
    #[error(
        "{map} describes a {map_size}-byte disc but {source_path} has {size} bytes; delete the map and the partial image to start over"
    )]
    MapMismatch {
        /// The map.
        map: PathBuf,
        /// Size it describes.
        map_size: u64,
        /// The source.
        source_path: PathBuf,
        /// The source's size.
        size: u64,
    },
}

fn write_err(path: &Path, source: io::Error) -> CopyError {
    let hint = if source.raw_os_error() == Some(28) {
        " (disk full: the partial image and its map are kept; free space and run rip again to resume)"
    } else {
        ""
    };
    CopyError::Write {
        path: path.to_path_buf(),
        source,
        hint,
    }
}

/// The size of a block device or file, by seeking to its end.
pub fn source_size(path: &Path) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(0))
}

/// Read as much of `buf` as the source gives at `pos` (short only at the end of the source).
fn read_at(src: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read_at(&mut buf[filled..], pos + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Copy `source` into `part`, keeping the map at `map_path`. Resumes from the map when one exists.
pub fn copy(
    source: &Path,
    part: &Path,
    map_path: &Path,
    opts: CopyOptions<'_>,
) -> Result<Report, CopyError> {
    let src_err = |source_err| CopyError::Source {
        path: source.to_path_buf(),
        source: source_err,
    };
    let size = source_size(source).map_err(src_err)?;
    let src = File::open(source).map_err(src_err)?;

    let fresh = !(map_path.exists() && part.exists());
    let mut map = if fresh {
        Map::new(size)
    } else {
        Map::load(map_path).map_err(|e| CopyError::Write {
            path: map_path.to_path_buf(),
            source: e,
            hint: "",
        })?
    };
    if map.size() != size {
        return Err(CopyError::MapMismatch {
            map: map_path.to_path_buf(),
            map_size: map.size(),
            source_path: source.to_path_buf(),
            size,
        });
    }
    map.fingerprint = Some(opts.fingerprint.clone());

    let needed = size - map.bytes(FINISHED);
    let dir = part.parent().unwrap_or(Path::new("."));
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| write_err(dir, e.into()))?;
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    // The partial file is sparse: what is already copied is already allocated.
    if needed > available {
        return Err(CopyError::NoSpace {
            path: part.to_path_buf(),
            needed,
            available,
        });
    }

    let out = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .map_err(|e| write_err(part, e))?;
    // No set_len up front: the file grows as it is written, and its length is fixed at the end.
    map.save(map_path).map_err(|e| write_err(map_path, e))?;

    let chunk = (opts.chunk.max(SECTOR as usize) / SECTOR as usize) * SECTOR as usize;
    let mut buf = vec![0u8; chunk];
    let started = Instant::now();
    let mut last_save = Instant::now();
    let mut last_progress = Instant::now();
    let mut read_this_run = 0u64;
    // A streaming hash is valid only if one pass read every byte in order without an error.
    let mut hasher = fresh.then(|| StreamHasher::new(chunk));
    let mut cancelled = false;

    let mut report_progress = |map: &Map, read_this_run: u64, force: bool, last: &mut Instant| {
        if force || last.elapsed() >= opts.progress_every {
            *last = Instant::now();
            let done = map.bytes(FINISHED);
            let rate = read_this_run as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let eta = (rate > 0.0).then(|| Duration::from_secs_f64((size - done) as f64 / rate));
            (opts.progress)(&Progress {
                done,
                total: size,
                rate,
                eta,
                unreadable: map.bytes(BAD) / SECTOR,
            });
        }
    };

    // Pass 1: large reads over what was never tried.
    'pass1: for (start, len) in map.areas(NON_TRIED) {
        let mut pos = start;
        let end = start + len;
        while pos < end {
            if opts.cancel.load(Ordering::Relaxed) {
                cancelled = true;
                break 'pass1;
            }
            let want = (end - pos).min(chunk as u64) as usize;
            // With a streaming hash, the chunk is read into a buffer of the hasher's pool and handed
            // to its thread; hashing then overlaps the next read and write.
            let mut pooled = hasher.as_ref().map(StreamHasher::buffer);
            let block = pooled.as_mut().unwrap_or(&mut buf);
            match read_at(&src, &mut block[..want], pos) {
                Ok(n) if n == want => {
                    out.write_all_at(&block[..n], pos)
                        .map_err(|e| write_err(part, e))?;
                    if let (Some(h), Some(b)) = (hasher.as_ref(), pooled) {
                        h.submit(b, n);
                    }
                    map.set(pos, n as u64, FINISHED);
                    read_this_run += n as u64;
                }
                Ok(n) => {
                    // The source ended early (a disc smaller than it said): the rest cannot be read.
                    out.write_all_at(&block[..n], pos)
                        .map_err(|e| write_err(part, e))?;
                    map.set(pos, n as u64, FINISHED);
                    map.set(pos + n as u64, want as u64 - n as u64, NON_TRIMMED);
                    hasher = None;
                }
                Err(e) => {
                    tracing::debug!(pos, len = want, error = %e, "read failed; the area will be read sector by sector");
                    map.set(pos, want as u64, NON_TRIMMED);
                    hasher = None;
                }
            }
            pos += want as u64;
            if last_save.elapsed() >= SAVE_EVERY {
                // The data first: a map saying "copied" must never outlive the bytes it describes.
                out.sync_data().map_err(|e| write_err(part, e))?;
                map.save(map_path).map_err(|e| write_err(map_path, e))?;
                last_save = Instant::now();
            }
            report_progress(&map, read_this_run, false, &mut last_progress);
        }
    }

    // Pass 2: sector by sector over what failed, now and in earlier runs.
    let mut todo: Vec<(u64, u64)> = map.areas(NON_TRIMMED);
    todo.extend(map.areas(BAD));
    todo.sort_unstable();
    'pass2: for (start, len) in todo {
        if cancelled {
            break;
        }
        let mut pos = start;
        while pos < start + len {
            if opts.cancel.load(Ordering::Relaxed) {
                cancelled = true;
                break 'pass2;
            }
            let want = (start + len - pos).min(SECTOR) as usize;
            let mut ok = false;
            for _ in 0..opts.retries.max(1) {
                match read_at(&src, &mut buf[..want], pos) {
                    Ok(n) if n == want => {
                        out.write_all_at(&buf[..n], pos)
                            .map_err(|e| write_err(part, e))?;
                        read_this_run += n as u64;
                        ok = true;
                        break;
                    }
                    _ => {}
                }
            }
            map.set(pos, want as u64, if ok { FINISHED } else { BAD });
            pos += want as u64;
            if last_save.elapsed() >= SAVE_EVERY {
                // The data first: a map saying "copied" must never outlive the bytes it describes.
                out.sync_data().map_err(|e| write_err(part, e))?;
                map.save(map_path).map_err(|e| write_err(map_path, e))?;
                last_save = Instant::now();
            }
            report_progress(&map, read_this_run, false, &mut last_progress);
        }
    }

    // Unreadable areas at the very end leave the file short; the image must have the disc's size.
    if out.metadata().map_err(|e| write_err(part, e))?.len() < size {
        out.set_len(size).map_err(|e| write_err(part, e))?;
    }
    out.sync_all().map_err(|e| write_err(part, e))?;
    map.save(map_path).map_err(|e| write_err(map_path, e))?;
    report_progress(&map, read_this_run, true, &mut last_progress);
    let complete = map.complete();
    let sha256 = if !complete {
        None
    } else if let (Some(h), false) = (hasher, cancelled) {
        Some(h.finish())
    } else {
        Some(sha256_file(part, &mut buf).map_err(|e| write_err(part, e))?)
    };
    Ok(Report {
        size,
        read_this_run,
        bad: map.bad_lba_ranges(),
        sha256,
        cancelled,
    })
}

/// SHA-256 on a second thread, so hashing overlaps reading and writing. A few chunk buffers
/// circulate between the copy loop and the hashing thread, so memory stays bounded.
struct StreamHasher {
    to_hash: std::sync::mpsc::SyncSender<(Vec<u8>, usize)>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<Sha256>,
}

/// Chunk buffers in flight between the copy loop and the hashing thread.
const POOL: usize = 3;

impl StreamHasher {
    fn new(chunk: usize) -> StreamHasher {
        let (to_hash, work) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(POOL);
        let (give_back, free) = std::sync::mpsc::channel();
        for _ in 0..POOL {
            give_back.send(vec![0u8; chunk]).expect("receiver alive");
        }
        let thread = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for (buf, n) in work {
                h.update(&buf[..n]);
                // The copy loop may have given up on the stream hash; then nobody takes buffers back.
                let _ = give_back.send(buf);
            }
            h
        });
        StreamHasher {
            to_hash,
            free,
            thread,
        }
    }

    /// A free buffer (waits while all are being hashed).
    fn buffer(&self) -> Vec<u8> {
        self.free
            .recv()
            .expect("the hashing thread returns every buffer")
    }

    /// Hash `buf[..n]` in order.
    fn submit(&self, buf: Vec<u8>, n: usize) {
        self.to_hash
            .send((buf, n))
            .expect("the hashing thread is alive");
    }

    /// Wait for the last chunk and return the digest.
    fn finish(self) -> String {
        drop(self.to_hash);
        hex(&self
            .thread
            .join()
            .expect("the hashing thread does not panic")
            .finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, reusing `buf`.
pub fn sha256_file(path: &Path, buf: &mut [u8]) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(cancel: &'a AtomicBool, progress: &'a mut dyn FnMut(&Progress)) -> CopyOptions<'a> {
        CopyOptions {
            chunk: 64 * 1024,
            retries: 2,
            progress,
            progress_every: Duration::from_secs(3600),
            cancel,
            fingerprint: "fp".into(),
        }
    }

    #[test]
    fn copies_a_file_byte_for_byte_with_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disc.iso");
        let data: Vec<u8> = (0..(300 * 2048 + 100) as u32)
            .map(|i| (i * 7 + i / 2048) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let (part, map) = (dir.path().join("x.part"), dir.path().join("x.map"));
        let cancel = AtomicBool::new(false);
        let mut calls = 0;
        let mut progress = |_: &Progress| calls += 1;
        let report = copy(&src, &part, &map, opts(&cancel, &mut progress)).unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), data);
        let want = hex(&Sha256::digest(&data));
        assert_eq!(report.sha256.as_deref(), Some(want.as_str()));
        assert!(report.bad.is_empty());
        assert!(calls >= 1, "the final progress is always reported");
        let m = Map::load(&map).unwrap();
        assert!(m.complete());
        assert_eq!(m.fingerprint.as_deref(), Some("fp"));
    }

    #[test]
    fn resumes_from_the_map_reading_only_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disc.iso");
        let data: Vec<u8> = (0..(64 * 2048) as u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let (part, map_path) = (dir.path().join("x.part"), dir.path().join("x.map"));
        // A previous run copied everything but sectors 10-11, which it found bad, into the partial.
        let mut previous = data.clone();
        previous[10 * 2048..12 * 2048].fill(0);
        std::fs::write(&part, &previous).unwrap();
        let mut m = Map::new(data.len() as u64);
        m.set(0, data.len() as u64, FINISHED);
        m.set(10 * 2048, 2 * 2048, BAD);
        m.save(&map_path).unwrap();
        let cancel = AtomicBool::new(false);
        let mut progress = |_: &Progress| {};
        let report = copy(&src, &part, &map_path, opts(&cancel, &mut progress)).unwrap();
        assert_eq!(
            report.read_this_run,
            2 * 2048,
            "only the two bad sectors were read"
        );
        assert_eq!(std::fs::read(&part).unwrap(), data);
        assert_eq!(
            report.sha256.unwrap(),
            hex(&Sha256::digest(&data)),
            "hash of the finished image"
        );
    }

    #[test]
    fn a_map_of_another_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disc.iso");
        std::fs::write(&src, vec![1u8; 4096]).unwrap();
        let (part, map_path) = (dir.path().join("x.part"), dir.path().join("x.map"));
        std::fs::write(&part, b"").unwrap();
        Map::new(8192).save(&map_path).unwrap();
        let cancel = AtomicBool::new(false);
        let mut progress = |_: &Progress| {};
        let err = copy(&src, &part, &map_path, opts(&cancel, &mut progress)).unwrap_err();
        assert!(matches!(err, CopyError::MapMismatch { .. }), "{err}");
    }
}
